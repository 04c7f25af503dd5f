"""Usage reports, one way for every caller: a ReportQuery (query.py) parsed from the CLI's
arguments or an HTTP request's parameters, run against the database (run.py) and rendered as
a table, CSV or JSON (render.py). A new report option is added here once."""
