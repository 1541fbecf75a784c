"""Who calls and how often: bearer access tokens verified, the development issuer, per-customer
rate limits."""
