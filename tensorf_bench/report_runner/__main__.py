"""``python -m tensorf_bench.report_runner quality JOB.json``: the quality-run child process."""

import sys

from .quality import main

sys.exit(main())
