"""Container mode (`taskmasterd --container`, implied as PID 1): the jobs' output on the daemon's
own stdout and stderr (console.py), and the daemon's exit decided by its jobs (exitwatch.py)."""
