import sys

from parent.cli import main

sys.exit(main())
