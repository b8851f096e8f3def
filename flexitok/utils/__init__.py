"""flexitok.utils"""
