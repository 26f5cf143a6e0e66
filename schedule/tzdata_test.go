package schedule

// The tests need Europe/Berlin and America/New_York even on machines
// without a zoneinfo database.
import _ "time/tzdata"
