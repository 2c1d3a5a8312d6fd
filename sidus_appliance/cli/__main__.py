"""`python -m sidus_appliance.cli` (the lab and the benches start the appliance this way)."""

import sys

from . import main

sys.exit(main())
