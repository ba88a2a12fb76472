"""What runs against a live environment to tell whether it works: the smoke flows (`smoke`),
the load (`k6`, and `k6_operator` beyond one machine), the monitors (`monitors`, and
`guard_sources`, the measurements a flag ramp's guards read) and the schema snapshot a
rehearsal compares (`snapshot`). Steps and workflows run them; they talk to the target only
through `rollout.adapters`."""
