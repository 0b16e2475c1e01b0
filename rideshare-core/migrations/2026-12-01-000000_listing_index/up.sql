-- A listing reads only from this index: the route and time it filters and orders on, and the
-- creator it lists, so no table lookup per listed ride (it was a tenth of a long listing's CPU).
CREATE INDEX rides_listing ON rides (source, destination, at, id, created_by);
DROP INDEX rides_route;
