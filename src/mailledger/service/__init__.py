"""Running the server: serve, runtime, status HTTP, systemd notify, reload, health, retention."""
