"""flexitok.models"""
