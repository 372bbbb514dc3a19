"""archobj harness: The grid runner: grid file -> DAG of stages, identity, run-directory state, executors."""
