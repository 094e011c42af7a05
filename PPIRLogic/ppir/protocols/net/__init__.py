"""Two-party networking: certificates, TLS 1.3 channels with mutual authentication, typed messages."""
