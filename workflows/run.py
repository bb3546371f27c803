"""`python -m workflows.run CONFIG [--set a.b=c ...]`: the whole pipeline (what `prift run` does).

The entry point for `ray job submit --working-dir . -- python -m workflows.run CONFIG`.
"""

import sys

from workflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
