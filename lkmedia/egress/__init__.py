"""LiveKit egress: requests -> validated config -> graph recipes."""
