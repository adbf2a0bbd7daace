"""The REST control plane: FastAPI over SQLAlchemy, talking to the tree over gRPC."""
