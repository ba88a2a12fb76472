"""Reports handed to people after a run: the release report (one self-contained HTML file).

Between the CLI and the engine in the layering: it reads engine events, plans and the journal,
and never imports typer or rich.
"""
