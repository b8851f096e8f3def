"""flexitok.eval"""
