// Package e2e holds only tests: backup.Service over the AVE backend and the
// avetest server. It is a package of its own so that the backend's unit
// tests do not depend on the engine's packages building.
package e2e
