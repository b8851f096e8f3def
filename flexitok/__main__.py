import sys

from flexitok.cli.main import main

sys.exit(main())
