"""The warm worker: a fork server that runs each local job's ``gbm`` command with the heavy imports already
done (``server``), the client every ``gbm`` process checks first (``client``) and its start/stop (``launch``)."""
