"""flexitok.data"""
