"""What runs show: tables, figures, the HTML report, the GLUE table."""
