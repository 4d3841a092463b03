"""``python -m lpo``: run the lpo command line."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lpo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
