"""`python -m lifelong.daemon.cli`: how the daemon starts its trainer (`... train --run-id N`)
and how daemon/serve_process.py starts `serve`, with the interpreter that runs them."""

from lifelong.daemon.cli import main

main()
