"""Sub-commands of the ``gbm`` command line; each module registers one (see ``gbm.cli``)."""
