"""Where caches are kept: store protocols, the pickle store (snapshot + journal), Redis."""
