"""`python -m spark_voice.serve [--host H] [--port P] [--profile mock|dev|prod] [--reload]`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
