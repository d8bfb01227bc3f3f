DROP TABLE IF EXISTS dashboard_widgets;
