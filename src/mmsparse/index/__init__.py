"""Serving sparse retrieval: index builds, engines (inverted, Seismic, Milvus), search, exports."""
