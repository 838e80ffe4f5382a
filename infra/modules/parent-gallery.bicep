// Deployed into the parent gallery's resource group: read access for kiln
// and for AIB, and an Event Grid system topic that forwards "a version was
// written" to kiln's base_image_events function.

@description('The gallery whose versions are kiln sources.')
param parentGalleryName string

@description('Principals that may read the parent gallery (kiln app, AIB build identity).')
param readerPrincipalIds array

@description('Create the event subscription (needs the function published first).')
param subscribe bool

@description('Resource id of the Event Grid triggered function: {app id}/functions/base_image_events.')
param functionResourceId string

@description('main.bicep\'s uniqueString of its resource group: names kiln\'s topic and subscription apart from other deployments\'.')
param deploymentSuffix string

@description('A system topic that already watches this resource group. Azure allows one system topic per source, so a second deployment (another kiln, or anything else on this group) must reuse it. Empty: create one.')
param existingSystemTopicName string = ''

var readerRole = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'

resource parentGallery 'Microsoft.Compute/galleries@2023-07-03' existing = {
  name: parentGalleryName
}

resource readers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for p in readerPrincipalIds: {
  name: guid(parentGallery.id, p, readerRole)
  scope: parentGallery
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRole)
    principalId: p
    principalType: 'ServicePrincipal'
  }
}]

// Resource-group system topics are global and live in the group they watch.
// The name carries kiln's deployment suffix: the parent group's name alone
// is no unique name (two kilns, or groups of one name in two subscriptions).
var createTopic = empty(existingSystemTopicName)
var topicName = createTopic ? 'kiln-${deploymentSuffix}' : existingSystemTopicName

resource newTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (createTopic) {
  name: topicName
  location: 'global'
  properties: {
    source: resourceGroup().id
    topicType: 'Microsoft.Resources.ResourceGroups'
  }
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: topicName
}

resource toKiln 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (subscribe) {
  parent: topic
  name: 'kiln-${deploymentSuffix}-base-image-events'
  dependsOn: [ newTopic ]
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: functionResourceId
        maxEventsPerBatch: 1
      }
    }
    filter: {
      includedEventTypes: [ 'Microsoft.Resources.ResourceWriteSuccess' ]
      // The subject of a resource-group event is the resource id: keep writes
      // of image versions in the parent gallery, drop everything else.
      subjectBeginsWith: '${parentGallery.id}/images/'
      advancedFilters: [
        {
          operatorType: 'StringContains'
          key: 'subject'
          values: [ '/versions/' ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
