package plan

// The tests need Europe/Berlin even on machines without a zoneinfo
// database.
import _ "time/tzdata"
