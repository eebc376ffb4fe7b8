"""Identity: password hashing, JSON Web Tokens and the login throttle."""
