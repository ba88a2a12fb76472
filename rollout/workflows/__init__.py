"""Workflows built on the engine: a rehearsal (`rehearsal`: reset → apply → smoke → rollback →
verify → apply → smoke, journaled) and the runbook's §8 sign-off (`signoff`)."""
