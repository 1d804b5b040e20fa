"""The local stack: real emulators and the services as local processes."""
