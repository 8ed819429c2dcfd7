"""The `tensorf-bench` command-line tool and the orchestration of benchmark reports."""
