"""``tagloop demo``: the whole loop on the local stack (see :mod:`services.demo.run`)."""
