"""transplantation"""
