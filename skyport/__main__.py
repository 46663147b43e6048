"""``python -m skyport``: the console command (the spawner starts its forwarder so)."""

from skyport.cli import main

main()
