"""Command line: argument parsing and dispatch only; the work is done by the library."""
