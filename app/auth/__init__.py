"""Request authentication: HMAC verification, nonces, and the signing CLI."""
