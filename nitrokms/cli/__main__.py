import sys

from nitrokms.cli import main

sys.exit(main())
