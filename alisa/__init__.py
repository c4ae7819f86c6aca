"""alisa: sparsity-aware KV caching (ALISA, ISCA 2024) as a research toolkit.

Parts live in top-level folders installed as subpackages: ``alisa.sim`` (simulator),
``alisa.kernels`` (Triton kernels and torch references), ``alisa.calibration``
(hardware measurement), plus bundled data in ``alisa.hardware_profiles`` and
``alisa.scenarios``. This package itself holds only the command line.
"""

__version__ = "0.1.0"
