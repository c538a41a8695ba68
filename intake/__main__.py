import sys

from intake.cli import main

# Guarded: a spawned child process (the webhook parse pool) imports this module as its main.
if __name__ == "__main__":
    sys.exit(main())
