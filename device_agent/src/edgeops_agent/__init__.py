"""The edgeops device agent. It must not import TensorFlow, pandas, SQLAlchemy or FastAPI."""

__version__ = "0.1.0"
