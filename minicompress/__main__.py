import sys

from minicompress.cli import main

sys.exit(main())
