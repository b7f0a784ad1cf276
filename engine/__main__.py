import sys

from engine import allocator

allocator.start()  # re-executes this command once under tcmalloc where it is installed (engine/allocator.py)

from engine.cli import main  # noqa: E402  (after the allocator: nothing heavy is imported twice)

sys.exit(main())
