"""The five restem services, one package each: entry point, config, gRPC and event adapters, core."""
