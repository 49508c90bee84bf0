"""What the run tells people: the terminal summary, JSON/Markdown reports, plots, the report header and progress lines."""
