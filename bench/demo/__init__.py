"""``tagloop demo``: the whole loop on the local stack (see :mod:`bench.demo.run`)."""
