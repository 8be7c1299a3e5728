"""The daemon: composition root, lifecycle, signals, control socket, systemd."""
