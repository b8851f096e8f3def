"""flexitok.nn"""
