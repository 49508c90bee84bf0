"""What the user configured: targets and project tables, the gate settings, the suites' typed option tables and the pytest options."""
