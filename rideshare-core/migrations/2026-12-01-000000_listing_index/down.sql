CREATE INDEX rides_route ON rides (source, destination, at, id);
DROP INDEX rides_listing;
